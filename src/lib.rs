//! strata: a declarative infrastructure engine for multi-site AI platforms.
//!
//! The flow, one module per step: [`stack`] and [`catalog`] load documents (checked by
//! [`schema`]), [`render`] turns blueprint instances into resources, [`graph`] orders them,
//! [`plan`] reads the live state through providers and decides what to do, [`apply`]
//! carries it out with the walker of [`walk`], and [`state`] records it. [`engine`] strings
//! these together; [`cli`] is the command line; [`output`] shows plans and reports.
#![deny(missing_docs)]

pub mod apply;
pub mod catalog;
pub mod cli;
pub mod diagnostics;
pub mod document;
pub mod engine;
pub mod graph;
pub mod output;
pub mod plan;
pub mod provider;
pub mod render;
pub mod schema;
pub mod stack;
pub mod state;
pub mod walk;
