"""The directory service's rules: profiles, mapping directory entries to roster records, sign-in."""
