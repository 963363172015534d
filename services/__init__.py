"""The demo system: business services built on :mod:`core.service.scaffold`, and its launcher.

Each service is a package run as its own process (``python -m services.customers``,
``services.inventory``, ``services.billing``); ``python -m services`` starts the
whole system (:mod:`services.launcher`).
"""
