"""The graded exercises, one module per chapter (``chNN_name.py``).

Each module lists its :class:`course_lib.grading.registry.Exercise` objects in
``EXERCISES``: the id, points, reference implementation, cases, comparator,
known-correct alternatives and known mistakes live together, so what an
exercise is worth is declared next to how it is checked.
:data:`CHAPTER_MODULES` is the explicit list the course's registry loads.
"""

#: The chapter modules whose ``EXERCISES`` make up the course (in chapter order).
CHAPTER_MODULES = (
    "ch00_orientation",
    "ch01_float_formats",
    "ch02_where_16_bits_break",
    "ch03_manual_mixed_precision",
    "ch04_loss_scaling",
    "ch05_automatic_mixed_precision",
    "ch06_bfloat16",
    "ch07_ddp_gradient_accumulation",
    "ch08_quantization_aware_training",
    "ch09_benchmarking",
    "ch10_keras_appendix",
    "ch11_fp8",
    "ch12_capstone",
)
