"""The inventory service (``python -m services.inventory``): :mod:`services.inventory.service`."""
