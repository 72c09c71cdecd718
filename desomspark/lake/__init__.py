"""The lake: where each table lives and how it is committed and read.

``schema``     every table's columns and types, defined once (Arrow; Spark derived)
``layout``     :class:`Lake` (paths, staging, night and micro-batch commits, reads) and :class:`Batch`
``labellog``   appending to the label logs without a reader ever seeing half a file
``queries``    read-side queries shared by the report, the console, export and the stages
"""
