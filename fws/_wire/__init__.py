"""
fws's wire: the one package that knows Twisted's and Autobahn's internals.

Everything between a socket and a message is here: the opening handshake's
bounds, the inbound fast parser (:mod:`fws._wire.framing`) and the frame
budget, the outbound lanes and their end-of-turn flush
(:mod:`fws._wire.outbound`), Autobahn's memory compaction and its corrected
close handling (:mod:`fws._wire.protocol`), the framing of a broadcast
once for many recipients (:mod:`fws._wire.factory`), the inlined epoll read
(:mod:`fws._wire.reactor`), twisted.web's HTTP channel, bounded like the
handshake (:mod:`fws._wire.http`), and the txredisapi protocols under fws's
own connection lifecycle (:mod:`fws._wire.redis`).

The rest of fws programs against public APIs and the small interfaces this
package declares: a connection tells the layer above about its life through
:class:`fws._wire.protocol.Upcalls` (admit, opened, message, closed), and
the wire asks the server only what :class:`fws._wire.protocol.WireHost`
declares. :data:`fws._wire.upstream.UPSTREAM_INTERNALS` lists every upstream
name this package relies on; ``tests/test_upstream.py`` checks it against the
installed libraries and that no module outside this package names any of the
private ones.
"""
