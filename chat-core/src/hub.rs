//! Local fan-out: the registry of this node's live connections.
