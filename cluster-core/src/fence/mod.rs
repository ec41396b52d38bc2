//! Fencing: devices that power a node off before its groups are taken over.
