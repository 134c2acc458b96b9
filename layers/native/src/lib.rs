//! `aiinfra._native`: the hot paths the Python package hands to Rust.
use pyo3::prelude::*;

mod batch;
mod envelope;
mod filter;
mod hnsw;
mod recall;
mod resp;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    envelope::register(m)?;
    resp::register(m)?;
    batch::register(m)?;
    filter::register(m)?;
    hnsw::register(m)?;
    Ok(())
}
