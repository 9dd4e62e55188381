"""The artifact: read a directory, tar or zip, refuse unsafe members, digest it, write the upload stream."""
