"""Glue between the Multiplexer core and the agent features (one hook per concern).

Each hook is an ``Extension``: ``async before(ctx)`` may rewrite the request, ``async
after(ctx)`` sees the outcome. They hold no business logic of their own: that lives in
``tiering``, ``sessions``, ``limits`` and ``metering``.
"""
