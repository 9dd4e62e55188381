"""deployer setup gitlab: a deploy key and the route's host keys as a project's CI/CD variables."""
