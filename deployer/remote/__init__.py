"""The target's side: the release layout, the POSIX-sh scripts run there, their statuses, and executors."""
