"""MixDA (Diao et al., ACL 2023; METHODS.md §2): domain adapters beside the FFN, mixed by a gate per task."""
