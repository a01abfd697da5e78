"""Matmul plans built once per distinct shape and relabelled for every other op of that shape.

A model repeats a handful of matmul shapes in every layer (Cerebras-GPT-13B: 181 matmuls, 5 shapes). A matmul's
tasks depend on its shape and on the layout, never on its tensors' names, which appear only in the tasks'
numeric actions: so the second op of a shape takes the first one's tasks, sharing those without actions and
renaming the tensors in the actions of the others. The relabelled plan equals the one ``matmul(op)`` builds
(``tests/test_plan_relabel.py`` checks every matmul of several models and mappings); any name it cannot map for
sure (a string that merely contains one of the template's names) makes it build the plan afresh instead.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace

from ..workloads import OpSpec
from .blocks import weight_tensor
from .plan import OpPlan


def shape_key(op: OpSpec, layout) -> tuple:
    """What a matmul's plan depends on besides tensor names: the op's sizes and the layout's SRAM settings."""
    return (op.kind, op.groups, op.m, op.k, op.n, op.flops, op.weight_bytes, op.act_in_bytes, op.act_out_bytes,
            op.weight == "wte", op.bias is not None, len(op.inputs), layout.reserved_bytes_per_pe,
            layout.enforce_sram)


def _names(op: OpSpec) -> list[str]:
    names = [op.name, *op.inputs]
    for attr in (op.weight, op.bias, op.gamma, op.beta):
        if attr:
            names.append(weight_tensor(op, attr))
    return names


class _Unsure(Exception):
    """A string in the template's actions that mentions a template name in a way the renaming does not know."""


class _Renamer:
    def __init__(self, template: OpSpec, op: OpSpec):
        old, new = _names(template), _names(op)
        self.map = dict(zip(old, new, strict=True))
        if len(self.map) != len(old) or any("#" in name for name in old):
            raise _Unsure
        self.old = old

    def __call__(self, obj):
        if isinstance(obj, str):
            new = self.map.get(obj)
            if new is not None:
                return new
            head, sep, tail = obj.partition("#")
            if sep and head in self.map:
                return self.map[head] + sep + tail
            if any(name in obj for name in self.old):
                raise _Unsure
            return obj
        if isinstance(obj, tuple):
            return tuple(self(x) for x in obj)
        if is_dataclass(obj) and not isinstance(obj, type):
            return type(obj)(**{f.name: self(getattr(obj, f.name)) for f in fields(obj)})
        return obj


def relabel(plan: OpPlan, op: OpSpec) -> OpPlan | None:
    """``plan`` (of another op of the same shape) for ``op``, or None when unsure."""
    try:
        rename = _Renamer(plan.op, op)
        tasks = tuple(replace(t, actions=rename(t.actions)) if t.actions else t for t in plan.tasks)
        if rename(plan.notes) != plan.notes:
            return None
    except _Unsure:
        return None
    return replace(plan, op=op, tasks=tasks)


def cached_matmul(layout, op: OpSpec) -> OpPlan:
    """``layout.matmul(op)``, built once per shape key on this layout and relabelled after that."""
    cache = layout.__dict__.setdefault("_matmul_templates", {})
    key = shape_key(op, layout)
    template = cache.get(key)
    if template is not None:
        plan = relabel(template, op)
        if plan is not None:
            return plan
    plan = layout.matmul(op)
    cache[key] = plan
    return plan
