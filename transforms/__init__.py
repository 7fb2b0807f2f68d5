"""Reusable Beam PTransforms and DoFns: sources, validation, inference, rows, sinks, dead letters.

Every transform that can reject a record returns a pair (main, dead_letters); a rejected record
becomes exactly one dead-letter row (transforms.records.dead_letters), never a crash or a silent drop.
"""
