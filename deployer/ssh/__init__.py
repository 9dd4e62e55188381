"""Reaching targets over SSH: routes, proxies, ssh_config, keys, host keys, the one handshake, keyscan, agent."""
