//! Choosing patches from their embeddings: exact k-nearest neighbours and max K-cover.

pub mod cover;
pub mod kcenter;
pub mod knn;
