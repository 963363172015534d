"""Essaim's shared mechanisms: settings, errors, Redis, discovery, balancing, breaking, events.

Every process (registry, configsvc, gateway, services) is built from these
modules; each mechanism lives here once (DESIGN.md principle 4).
"""
