"""The lake: where each table lives and how it is committed and read.

``schema``     every table's columns and types, defined once (Arrow; Spark derived)
``layout``     :class:`Lake` (paths, staging, night and micro-batch commits, reads) and :class:`Batch`
``commit``     how a run's staged rows join the lake without losing or doubling another writer's
``lock``       the commit lock: one writer at a time, for the length of a commit
``check``      ``desomspark check``: every file readable, every commit finished; ``--repair``
``labellog``   appending to the label logs without a reader ever seeing half a file
``queries``    read-side queries shared by the report, the console, export and the stages
"""
