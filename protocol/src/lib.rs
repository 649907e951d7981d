//! The host ↔ guest-agent API, shared by the shim and the agent so the two can never drift.
