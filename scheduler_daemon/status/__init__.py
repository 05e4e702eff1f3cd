"""The status cache (a store and the event consumer that fills it) and the stop handler."""
