//! The synthetic vessel cohort. (Being written: see the helper's task.)
