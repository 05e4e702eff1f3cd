"""rmcs: a multi-cluster scheduler for Ray jobs, fed by a RabbitMQ priority queue."""

__version__ = "0.1.0"
