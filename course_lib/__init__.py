"""course_lib: the library behind *Half-Precision Training from Zero*.

Reference implementations of what the chapters teach, the grader and the
notebook builder. Import the pieces you need, e.g.::

    from course_lib.device import default_device
    from course_lib.grading import check
"""
__version__ = "0.1.0"
