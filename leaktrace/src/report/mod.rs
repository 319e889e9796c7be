//! What leaktrace prints: the live line each interval and the summary at the end (`live`),
//! and the goroutine and memory snapshot (`dump`). What it exports for other tools: pprof
//! profiles (`pprof`), histograms over time as HdrHistogram interval logs (`hlog`), and
//! metrics for Prometheus to scrape (`prometheus`).

pub mod dump;
pub mod exports;
pub mod histograms;
pub mod hlog;
pub mod leaks;
pub mod live;
pub mod metrics;
pub mod pprof;
pub mod prometheus;
pub mod verdict;
