"""
Bundled filters, one module each; name them with ``-f fws.filters.NAME``, the
legacy ``-f filtered_websocket.filters.NAME``, or just ``-f NAME``.

===============================  ==========================================================
module                           behaviour
===============================  ==========================================================
``broadcast_messages``           every message goes to every other connected user
``broadcast_messages_by_token``  ``token:NAME`` joins group NAME; other messages go to the
                                 other members of the sender's group
``broadcast_pubsub``             every pub/sub message goes to every connected user
``echo``                         every message goes back to its sender, kind preserved
``stdout_rawdata``               prints raw bytes as they arrive (``--RAWDATA--``)
``stdout_messages``              prints every message with its sender id (``--MESSAGE--``)
``stdout_pubsub``                prints every pub/sub message (``--PUBSUB--``)
===============================  ==========================================================
"""
