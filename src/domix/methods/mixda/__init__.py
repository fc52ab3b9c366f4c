"""MixDA (Diao et al., ACL 2023; docs/methods.md §2): domain adapters beside the FFN, mixed by a gate per task."""
