//! Everything ztunnel does inside enrolled pods' network namespaces.

pub mod netns;
