"""Scheduled jobs: the built-in jobs, the runner that gives each run to one instance through a
lease in the database, and the scheduler that runs them inside the gateway.

``registry`` lists the jobs; ``runner`` runs one (``interlock jobs run`` and the scheduler
alike); ``scheduler`` is the gateway's background task. Importing this package does no I/O.
"""
