"""Atomic releases on targets that allow SFTP only: the same layout, lock, delta and switch, built
with file operations (``remote.files.FileSession``) instead of shell scripts.

``state`` reads what the shell probe would report; ``tree`` removes release trees and reads and
writes the stat snapshots; ``lock`` is the deploy lock as a directory; ``build`` uploads a
release (pipelined, server-side copies of unchanged files); ``target`` is one target's push in
the phases ``push.fleet`` drives; ``manage`` lists, rolls back and unlocks.
"""
