"""The billing service (``python -m services.billing``): :mod:`services.billing.service`."""
