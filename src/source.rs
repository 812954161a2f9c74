//! What backups read. `files` walks file trees; databases, disk images and command streams
//! come with later versions and produce the same trees of nodes.

pub mod files;
