//! Pictures for people: contact sheets of patch sets (and, later, the HTML report).

pub mod gallery;
