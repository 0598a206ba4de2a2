//! warren's integration tests, one binary: each module is a former `tests/<name>.rs`, so a
//! build compiles and links the shared support code and the dependencies once, not 40 times.
//! Run one module with `scripts/test.sh worker::` or one test by its name.

mod support;

mod archive;
mod batch_publish;
mod bridge_broker;
mod bridge_crash;
mod bridge_malformed;
mod bridge_nack;
mod bridge_pipeline;
mod bridge_shutdown;
mod bridge_silence;
mod bridge_stall;
mod bridge_unroutable;
mod bridge_upstream_edge;
mod bridge_webhook;
mod bridge_webhook_abandon;
mod bridge_webhook_bin;
mod cli_output;
mod cluster;
mod console;
mod custom_handler;
mod demo;
mod dlq_bench;
mod dlq_browse;
mod dlq_cli;
mod dlq_list;
mod dlq_purge;
mod dlq_replay;
mod dlq_replay_kill;
mod dlq_stats;
mod dlq_tables;
mod dlq_unrouted;
mod fuzz_corpus;
mod http_bench;
mod http_chaos;
mod http_client;
mod http_duplicates;
mod http_worker;
mod inbound;
mod lanes;
mod metrics;
mod node_list;
mod permissions;
mod postgres;
mod reliability;
mod sim_api;
mod sim_upstream;
mod status;
mod topology;
mod topology_errors;
mod trader;
mod worker;
mod worker_rss;
