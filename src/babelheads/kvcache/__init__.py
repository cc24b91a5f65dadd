"""KV caches that keep different amounts per KV head, the policies that choose what each head keeps,
and what they cost in bytes."""
