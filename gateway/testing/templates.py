"""A corpus of typical push and email templates, for equivalence tests and benchmarks.

Modelled on what marketing teams write (abandoned carts, orders, loyalty, re-engagement),
covering the filters and tags the personalization issue names. Every template renders
against contexts shaped like the send job's (attributes, events, properties).
"""

from __future__ import annotations

CORPUS: dict[str, str] = {
    # push titles and bodies
    "greeting": "{{ attributes.first_name }}, your cart is waiting",
    "greeting_default": "Hi {{ attributes.first_name | default: 'there' }}!",
    "cart_value": "{{ events.cart_abandoned.properties.value }} {{ events.cart_abandoned.properties.currency }} "
    "of picks saved. Express shipping is on us today.",
    "brand": 'Your {{ attributes.favorite_brand | default: "favourite" }} picks are still in your cart.',
    "upcase_name": "{{ attributes.first_name | upcase }}, last chance!",
    "capitalize": "{{ attributes.first_name | downcase | capitalize }}, welcome back",
    "truncate": "{{ properties.headline | truncate: 40 }}",
    "truncatewords": "{{ properties.headline | truncatewords: 5, '...' }}",
    "append_prepend": "{{ properties.order_id | prepend: '#' | append: ' has shipped' }}",
    "math": "Save {{ events.cart_abandoned.properties.value | times: 0.1 | round: 2 }} "
    "{{ events.cart_abandoned.properties.currency | default: 'EUR' }} today",
    "plus_minus": "{{ events.cart_abandoned.count | plus: 1 }} visits, "
    "{{ attributes.points | minus: 100 }} points left",
    "date": 'Arriving {{ properties.eta | date: "%A %-d %B" }} with {{ properties.carrier }}.',
    "size_first": "{{ properties.items.size }} items, starting with {{ properties.items.first }}",
    "replace": "{{ properties.message | replace: 'cart', 'basket' }}",
    "strip": "[{{ attributes.nickname | strip }}]",
    "if_else": "{% if attributes.loyalty_member %}Members save 10%{% else %}Join to save 10%{% endif %}",
    "if_compare": "{% if events.cart_abandoned.properties.value >= 200 %}Free express shipping"
    "{% elsif events.cart_abandoned.properties.value >= 50 %}Free shipping"
    "{% else %}Your cart is saved{% endif %}",
    "if_contains": "{% if attributes.tags contains 'vip' %}VIP early access{% else %}Early access{% endif %}",
    "unless": "{% unless attributes.loyalty_member %}Become a member. {% endunless %}Thanks, "
    "{{ attributes.first_name | default: 'friend' }}",
    "and_or": "{% if attributes.language == 'fr' and attributes.loyalty_member or attributes.tier == 'gold' %}"
    "Offre speciale{% else %}Special offer{% endif %}",
    "assign": "{% assign name = attributes.first_name | default: 'you' | capitalize %}Good news, {{ name }}!",
    "channel": "{% if channel == 'email' %}Read more below{% else %}Tap to open{% endif %}",
    "user_and_campaign": "{{ campaign }}/{{ user_id }}",
    "escape_html": "<p>Hi {{ attributes.first_name | escape }},</p><p>Your cart ships <b>free</b> today.</p>",
    "email_text": 'Hi {{ attributes.first_name | default: "there" }},\norder {{ properties.order_id }} ships with '
    "{{ properties.carrier }} (tracking {{ properties.tracking }}).",
    "for_items": "{% for item in properties.items %}{{ item }}{% unless forloop.last %}, {% endunless %}{% endfor %}",
    "for_limit": "{% for item in properties.items limit: 2 offset: 1 %}[{{ item }}]{% else %}none{% endfor %}",
    "for_reversed": "{% for item in properties.items reversed %}{{ forloop.index }}:{{ item }} {% endfor %}",
    "for_nested": "{% for item in properties.items %}{% for t in attributes.tags %}{{ forloop.parentloop.index }}"
    "{{ t }}{% endfor %}{% endfor %}",
    "for_map": "{% for pair in properties.nested %}{{ pair[0] }}={{ pair[1] }};{% endfor %}",
    "case": "{% case attributes.language %}{% when 'fr' %}Bonjour{% when 'es' %}Hola{% else %}Hello{% endcase %}"
    " {{ attributes.first_name | default: '' }}",
}


# The template fields of the shared example jobs, by JSON path: measured beside the corpus.
def example_templates() -> dict[str, str]:
    import json

    from gateway.testing.examples import example_jobs

    found: dict[str, str] = {}
    for name, body in example_jobs():
        job = json.loads(body)
        for i, variant in enumerate(job["variants"]):
            for kind, fields in variant["content"].items():
                for field, value in fields.items():
                    if isinstance(value, str) and ("{{" in value or "{%" in value):
                        found[f"{name}:variants[{i}].{kind}.{field}"] = value
    return found
