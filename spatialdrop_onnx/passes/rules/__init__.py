"""Dropout rewrite rules, one exporter pattern family per module.

Each module declares its rules as classes (a ``pattern``, a ``check`` that
explains failures, a ``rewrite``) and a ``rules(ctx)`` factory. The ordered
rule set lives in :mod:`spatialdrop_onnx.passes.rule_set`.
"""
