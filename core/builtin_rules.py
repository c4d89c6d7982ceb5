"""The core's own preflight rules, registered through the same hook any plugin uses."""

from gpupass.core.hookspecs import RegisterRule, hookimpl


@hookimpl
def gpupass_register_rules(register: RegisterRule) -> None:
    # Imported when the rules are first asked for (gpupass.core.plugins.Registry.rules), not with the plugin.
    from gpupass.core.domain import rules, share_rules
    from gpupass.core.domain.sharing import ASSIGN_SHARE, RELEASE_SHARE

    for rule in rules.ASSIGN_RULES:
        register(rule, operations=("assign",))
    for rule in rules.RELEASE_RULES:
        register(rule, operations=("release",))
    for rule in share_rules.ASSIGN_SHARE_RULES:
        register(rule, operations=(ASSIGN_SHARE,))
    for rule in share_rules.RELEASE_SHARE_RULES:
        register(rule, operations=(RELEASE_SHARE,))
