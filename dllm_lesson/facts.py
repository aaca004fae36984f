"""The small hand-written world the offline corpus is generated from.

Every fact here is real (capitals as of 2024; "language" is the main or most widely
used official language). The tables are deliberately plain data: the corpus generator
in :mod:`dllm_lesson.data` turns them into sentences and chat pairs.
Taught in ``00_welcome`` (what the tiny models know).
"""

# country | capital | continent | main language
_COUNTRIES = """
Afghanistan|Kabul|Asia|Pashto
Albania|Tirana|Europe|Albanian
Algeria|Algiers|Africa|Arabic
Andorra|Andorra la Vella|Europe|Catalan
Angola|Luanda|Africa|Portuguese
Argentina|Buenos Aires|South America|Spanish
Armenia|Yerevan|Asia|Armenian
Australia|Canberra|Oceania|English
Austria|Vienna|Europe|German
Azerbaijan|Baku|Asia|Azerbaijani
Bahrain|Manama|Asia|Arabic
Bangladesh|Dhaka|Asia|Bengali
Belarus|Minsk|Europe|Belarusian
Belgium|Brussels|Europe|Dutch
Belize|Belmopan|North America|English
Benin|Porto-Novo|Africa|French
Bhutan|Thimphu|Asia|Dzongkha
Bolivia|Sucre|South America|Spanish
Bosnia and Herzegovina|Sarajevo|Europe|Bosnian
Botswana|Gaborone|Africa|English
Brazil|Brasilia|South America|Portuguese
Brunei|Bandar Seri Begawan|Asia|Malay
Bulgaria|Sofia|Europe|Bulgarian
Burkina Faso|Ouagadougou|Africa|French
Burundi|Gitega|Africa|Kirundi
Cambodia|Phnom Penh|Asia|Khmer
Cameroon|Yaounde|Africa|French
Canada|Ottawa|North America|English
Chad|N'Djamena|Africa|French
Chile|Santiago|South America|Spanish
China|Beijing|Asia|Mandarin
Colombia|Bogota|South America|Spanish
Costa Rica|San Jose|North America|Spanish
Croatia|Zagreb|Europe|Croatian
Cuba|Havana|North America|Spanish
Cyprus|Nicosia|Europe|Greek
Czech Republic|Prague|Europe|Czech
Denmark|Copenhagen|Europe|Danish
Djibouti|Djibouti|Africa|French
Dominican Republic|Santo Domingo|North America|Spanish
Ecuador|Quito|South America|Spanish
Egypt|Cairo|Africa|Arabic
El Salvador|San Salvador|North America|Spanish
Eritrea|Asmara|Africa|Tigrinya
Estonia|Tallinn|Europe|Estonian
Ethiopia|Addis Ababa|Africa|Amharic
Fiji|Suva|Oceania|English
Finland|Helsinki|Europe|Finnish
France|Paris|Europe|French
Gabon|Libreville|Africa|French
Georgia|Tbilisi|Asia|Georgian
Germany|Berlin|Europe|German
Ghana|Accra|Africa|English
Greece|Athens|Europe|Greek
Guatemala|Guatemala City|North America|Spanish
Guinea|Conakry|Africa|French
Guyana|Georgetown|South America|English
Haiti|Port-au-Prince|North America|Haitian Creole
Honduras|Tegucigalpa|North America|Spanish
Hungary|Budapest|Europe|Hungarian
Iceland|Reykjavik|Europe|Icelandic
India|New Delhi|Asia|Hindi
Indonesia|Jakarta|Asia|Indonesian
Iran|Tehran|Asia|Persian
Iraq|Baghdad|Asia|Arabic
Ireland|Dublin|Europe|English
Israel|Jerusalem|Asia|Hebrew
Italy|Rome|Europe|Italian
Jamaica|Kingston|North America|English
Japan|Tokyo|Asia|Japanese
Jordan|Amman|Asia|Arabic
Kazakhstan|Astana|Asia|Kazakh
Kenya|Nairobi|Africa|Swahili
Kiribati|Tarawa|Oceania|English
Kuwait|Kuwait City|Asia|Arabic
Kyrgyzstan|Bishkek|Asia|Kyrgyz
Laos|Vientiane|Asia|Lao
Latvia|Riga|Europe|Latvian
Lebanon|Beirut|Asia|Arabic
Lesotho|Maseru|Africa|Sesotho
Liberia|Monrovia|Africa|English
Libya|Tripoli|Africa|Arabic
Liechtenstein|Vaduz|Europe|German
Lithuania|Vilnius|Europe|Lithuanian
Luxembourg|Luxembourg|Europe|Luxembourgish
Madagascar|Antananarivo|Africa|Malagasy
Malawi|Lilongwe|Africa|English
Malaysia|Kuala Lumpur|Asia|Malay
Maldives|Male|Asia|Dhivehi
Mali|Bamako|Africa|French
Malta|Valletta|Europe|Maltese
Mauritania|Nouakchott|Africa|Arabic
Mauritius|Port Louis|Africa|English
Mexico|Mexico City|North America|Spanish
Moldova|Chisinau|Europe|Romanian
Monaco|Monaco|Europe|French
Mongolia|Ulaanbaatar|Asia|Mongolian
Montenegro|Podgorica|Europe|Montenegrin
Morocco|Rabat|Africa|Arabic
Mozambique|Maputo|Africa|Portuguese
Myanmar|Naypyidaw|Asia|Burmese
Namibia|Windhoek|Africa|English
Nepal|Kathmandu|Asia|Nepali
Netherlands|Amsterdam|Europe|Dutch
New Zealand|Wellington|Oceania|English
Nicaragua|Managua|North America|Spanish
Niger|Niamey|Africa|French
Nigeria|Abuja|Africa|English
North Korea|Pyongyang|Asia|Korean
North Macedonia|Skopje|Europe|Macedonian
Norway|Oslo|Europe|Norwegian
Oman|Muscat|Asia|Arabic
Pakistan|Islamabad|Asia|Urdu
Panama|Panama City|North America|Spanish
Papua New Guinea|Port Moresby|Oceania|Tok Pisin
Paraguay|Asuncion|South America|Spanish
Peru|Lima|South America|Spanish
Philippines|Manila|Asia|Filipino
Poland|Warsaw|Europe|Polish
Portugal|Lisbon|Europe|Portuguese
Qatar|Doha|Asia|Arabic
Romania|Bucharest|Europe|Romanian
Russia|Moscow|Europe|Russian
Rwanda|Kigali|Africa|Kinyarwanda
Samoa|Apia|Oceania|Samoan
San Marino|San Marino|Europe|Italian
Saudi Arabia|Riyadh|Asia|Arabic
Senegal|Dakar|Africa|French
Serbia|Belgrade|Europe|Serbian
Sierra Leone|Freetown|Africa|English
Singapore|Singapore|Asia|English
Slovakia|Bratislava|Europe|Slovak
Slovenia|Ljubljana|Europe|Slovene
Solomon Islands|Honiara|Oceania|English
Somalia|Mogadishu|Africa|Somali
South Africa|Pretoria|Africa|Zulu
South Korea|Seoul|Asia|Korean
South Sudan|Juba|Africa|English
Spain|Madrid|Europe|Spanish
Sri Lanka|Colombo|Asia|Sinhala
Sudan|Khartoum|Africa|Arabic
Suriname|Paramaribo|South America|Dutch
Sweden|Stockholm|Europe|Swedish
Switzerland|Bern|Europe|German
Syria|Damascus|Asia|Arabic
Tajikistan|Dushanbe|Asia|Tajik
Tanzania|Dodoma|Africa|Swahili
Thailand|Bangkok|Asia|Thai
Togo|Lome|Africa|French
Tonga|Nuku'alofa|Oceania|Tongan
Tunisia|Tunis|Africa|Arabic
Turkey|Ankara|Asia|Turkish
Turkmenistan|Ashgabat|Asia|Turkmen
Tuvalu|Funafuti|Oceania|Tuvaluan
Uganda|Kampala|Africa|English
Ukraine|Kyiv|Europe|Ukrainian
United Arab Emirates|Abu Dhabi|Asia|Arabic
United Kingdom|London|Europe|English
United States|Washington|North America|English
Uruguay|Montevideo|South America|Spanish
Uzbekistan|Tashkent|Asia|Uzbek
Vanuatu|Port Vila|Oceania|Bislama
Venezuela|Caracas|South America|Spanish
Vietnam|Hanoi|Asia|Vietnamese
Yemen|Sanaa|Asia|Arabic
Zambia|Lusaka|Africa|English
Zimbabwe|Harare|Africa|English
"""

#: (country, capital, continent, language) for every country in the corpus
COUNTRIES: list[tuple[str, str, str, str]] = [
    tuple(line.split("|")) for line in _COUNTRIES.strip().splitlines()
]

#: the G20's member countries (the corpus must cover all of them)
G20 = [
    "Argentina", "Australia", "Brazil", "Canada", "China", "France", "Germany", "India",
    "Indonesia", "Italy", "Japan", "Mexico", "Russia", "Saudi Arabia", "South Africa",
    "South Korea", "Turkey", "United Kingdom", "United States",
]

# animal | legs | sound | class
_ANIMALS = """
dog|4|barks|mammal
cat|4|meows|mammal
cow|4|moos|mammal
horse|4|neighs|mammal
sheep|4|bleats|mammal
pig|4|oinks|mammal
lion|4|roars|mammal
wolf|4|howls|mammal
mouse|4|squeaks|mammal
donkey|4|brays|mammal
elephant|4|trumpets|mammal
monkey|4|chatters|mammal
duck|2|quacks|bird
owl|2|hoots|bird
crow|2|caws|bird
rooster|2|crows|bird
goose|2|honks|bird
pigeon|2|coos|bird
frog|4|croaks|amphibian
snake|0|hisses|reptile
bee|6|buzzes|insect
cricket|6|chirps|insect
spider|8|hisses|arachnid
"""

#: (animal, number of legs, the sound it makes, its class)
ANIMALS: list[tuple[str, int, str, str]] = [
    (a, int(legs), sound, cls)
    for a, legs, sound, cls in (line.split("|") for line in _ANIMALS.strip().splitlines())
]

#: (thing, its usual colour)
COLOURS: list[tuple[str, str]] = [
    ("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
    ("a banana", "yellow"), ("a tomato", "red"), ("an orange", "orange"),
    ("a lemon", "yellow"), ("milk", "white"), ("blood", "red"), ("the sea", "blue"),
    ("a leaf", "green"), ("chocolate", "brown"), ("a carrot", "orange"),
    ("an eggplant", "purple"), ("a strawberry", "red"), ("ash", "grey"),
    ("a cucumber", "green"), ("the sun", "yellow"), ("a raven", "black"),
]

NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen", "twenty",
]
