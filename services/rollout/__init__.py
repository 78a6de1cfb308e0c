"""Rollout controller: moves a candidate shadow -> canary -> full, or rolls it back."""
