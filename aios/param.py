"""Every fixed limit of the kernel in one place, one commented line each (xv6's param.h).
Tunable values live in aios.config; these are the bounds that config is checked against."""

MAX_PRIORITY = 99            # syscall priorities run 0 (lowest) .. MAX_PRIORITY (most urgent)
MAX_PAYLOAD_BYTES = 4 << 20  # one syscall's JSON payload, after decoding
MAX_MESSAGES = 4096          # messages in one LLM syscall
MAX_TOKENS = 1 << 20         # max_tokens of one LLM syscall
MAX_IDEMPOTENCY_KEY_CHARS = 200   # a tool syscall's idempotency_key
MAX_SLOTS = 4096             # slots one backend may declare
EVENT_QUEUE_DEPTH = 4096     # events buffered per bus subscriber before it is marked lagging
JOURNAL_BATCH_MAX = 1024     # records committed in one journal transaction
MAX_LIVE_LEDGER = 1 << 16    # requests a live simulated engine records before, once empty, it starts a fresh ledger
