//! Pictures for people: contact sheets, triptychs, inline SVG charts and the HTML report.

pub mod gallery;
pub mod html;
pub mod svg;
