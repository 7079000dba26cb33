"""The graded exercises, one module per chapter (``chNN_name.py``).

Each module registers its :class:`course_lib.grading.Exercise` objects: the
id, points, reference implementation, cases and comparator live together, so
what an exercise is worth is declared next to how it is checked.
"""
