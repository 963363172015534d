"""The customers service (``python -m services.customers``): :mod:`services.customers.service`."""
