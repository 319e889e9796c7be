//! What leaktrace prints: the live line each interval and the summary at the end (`live`),
//! and the goroutine and memory snapshot (`dump`). What it exports for other tools: pprof
//! profiles (`pprof`) and histograms over time as HdrHistogram interval logs (`hlog`).

pub mod dump;
pub mod hlog;
pub mod leaks;
pub mod live;
pub mod pprof;
