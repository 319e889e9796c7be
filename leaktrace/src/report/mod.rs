//! What leaktrace prints: the live line each interval and the summary at the end (`live`),
//! and the goroutine and memory snapshot (`dump`).

pub mod dump;
pub mod exports;
pub mod histograms;
pub mod leaks;
pub mod live;
pub mod verdict;
