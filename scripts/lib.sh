# Shared steps of scripts/serve and scripts/test. Sourced, not run.
# Works on a fresh Debian/Ubuntu machine with Python 3.11+; installs what is missing.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    say "need root to run: $*"; return 1; fi
}

# apt-get install the named Debian packages that are not installed yet.
ensure_debian_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

is_python_311() {
  command -v "$1" >/dev/null && "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

# The newest Python 3.11+ and, of one version, the distribution's own (/usr/bin) before
# others on the PATH: Debian and Ubuntu compile theirs with PGO and LTO, and a plain source
# build (pyenv's default) serves about 15 % fewer requests per CPU second (bench/README.md).
# INTERLOCK_PYTHON names the interpreter to use instead.
find_python() {
  if [ -n "${INTERLOCK_PYTHON:-}" ]; then
    if is_python_311 "$INTERLOCK_PYTHON"; then echo "$INTERLOCK_PYTHON"; return 0; fi
    say "INTERLOCK_PYTHON=$INTERLOCK_PYTHON is not Python 3.11 or newer"; return 1
  fi
  for candidate in /usr/bin/python3.13 python3.13 /usr/bin/python3.12 python3.12 \
    /usr/bin/python3.11 python3.11 python3; do
    if is_python_311 "$candidate"; then echo "$candidate"; return 0; fi
  done
  say "Python 3.11 or newer is required"; return 1
}

# Create .venv (once) and install the project with the given extras, e.g. ".[test]".
ensure_python_env() {
  local target="${1:-.}" python
  python="$(find_python)"
  if ! command -v g++ >/dev/null || ! command -v cc >/dev/null; then
    ensure_debian_packages build-essential  # llama.cpp compiles from source once
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
      ensure_debian_packages python3-venv
    fi
    say "creating $VENV"
    "$python" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
  fi
  say "installing interlock (the first time compiles llama.cpp: several minutes on 2 cores)"
  (cd "$ROOT" && CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/pip" install -q -e "$target")
}

# `npm ci` in the given folder when its node_modules is missing or was installed from another
# package-lock.json (a copy of the lock it was installed from is kept inside node_modules).
ensure_node_packages() {
  local dir="$1"
  if [ -d "$dir/node_modules" ] && cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-lock"; then
    return 0
  fi
  say "installing the npm packages of $dir"
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  cp "$dir/package-lock.json" "$dir/node_modules/.installed-lock"
}
