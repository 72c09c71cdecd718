"""What people see and do with the map: the console, the static report, label/export/similar/filter.

``console/``  the web console (Flask blueprint: ``app``, ``routes``, ``view``)
``report``    the static HTML report
``mapstate``  the champion map as both read it (members, cells, models)
``explore``   label, export, similar, filter (the small commands)
``plots``     every picture (matplotlib)
``drift``     per-night divergence and CCD health
"""
