"""The lowest layer: process group, precision, atomic file and weight I/O, logging, seeds.

Everything here takes plain values (a dtype name, a path, a device), never a ``Config``, so every
layer above (``config`` included) can use it.
"""
