"""The core's own preflight rules, registered through the same hook any plugin uses."""

from gpupass.core.domain import rules
from gpupass.core.hookspecs import RegisterRule, hookimpl


@hookimpl
def gpupass_register_rules(register: RegisterRule) -> None:
    for rule in rules.ASSIGN_RULES:
        register(rule, operations=("assign",))
    for rule in rules.RELEASE_RULES:
        register(rule, operations=("release",))
