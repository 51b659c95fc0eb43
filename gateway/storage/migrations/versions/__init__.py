"""One module per migration, applied in order by :func:`gateway.storage.db.upgrade`."""
