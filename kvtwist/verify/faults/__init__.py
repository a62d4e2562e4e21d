"""The nemesis's faults, one module per family; ``kvtwist.verify.nemesis`` holds their table.

Every fault is a function ``(nemesis, healthy[, tag]) -> Active | None``, so the
table's rows are plain references and each family can be read on its own.
"""
