//! Workers: the `Driver` trait, the local driver, and the `hadron worker`
//! entrypoint that both drivers run.

pub mod spec;
